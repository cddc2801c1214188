//! 2-D batch normalisation with per-task statistics, and the caller-owned running statistics
//! ([`BnState`]). It must not keep statistics inside the layer: a model is shared by every task
//! and every inner step, so hidden state would leak between them.

use tch::Tensor;

use super::shared::{batch_moments, check_maps, maybe_channels_last, ConvTasks};
use super::{Module, ParamDef, Scope};
use crate::params::Init;
use crate::{Error, Result};

/// PyTorch's `nn.BatchNorm2d(channels, eps, momentum)` with affine parameters "weight" `[C]`
/// (init 1) and "bias" `[C]` (init 0).
///
/// Statistics: by default the batch's own (per task when task-batched), in train and eval alike,
/// as MAML does and as PyTorch's `track_running_stats=False`. Running statistics are kept only
/// when the caller passes a [`BnState`] to `forward_with_state`.
///
/// With [`BatchNorm2d::per_step`] (MAML++'s BNWB and BNRS, Antoniou et al. 2019) the layer
/// holds one row of affine parameters and running statistics per inner step.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    channels: i64,
    eps: f64,
    momentum: f64,
    tasks: ConvTasks,
    /// MAML++'s per-step rows: `Some(S)` gives "weight", "bias", "running_mean" and
    /// "running_var" the shape `[S, C]`.
    steps: Option<i64>,
}

impl BatchNorm2d {
    pub fn new(channels: i64) -> BatchNorm2d {
        BatchNorm2d {
            channels,
            eps: 1e-5,
            momentum: 0.1,
            tasks: ConvTasks::Auto,
            steps: None,
        }
    }

    /// One set of affine parameters and running statistics per inner step (MAML++'s BNWB and
    /// BNRS): "weight" and "bias" are `[steps, C]` (`[T, steps, C]` task-batched), and so are the
    /// running statistics in a [`BnState`]. A forward at inner step s
    /// ([`Scope::with_step`]) uses row `min(s, steps - 1)`; a forward without a step uses the
    /// last row (the adapted model's). `steps` below 1 counts as 1.
    pub fn per_step(mut self, steps: i64) -> BatchNorm2d {
        self.steps = Some(steps.max(1));
        self
    }

    /// The row of a per-step layer that `scope`'s step reads.
    fn row(&self, scope: &Scope<'_>) -> Option<i64> {
        let steps = self.steps?;
        let step = scope.step().map_or(steps - 1, |s| s as i64);
        Some(step.min(steps - 1))
    }

    /// `t` (`[S, C]` or `[T, S, C]`) at row `row`, or `t` itself for a layer without steps.
    fn at_row(t: &Tensor, row: Option<i64>) -> Result<Tensor> {
        Ok(match row {
            Some(r) => t.f_select(t.dim() as i64 - 2, r)?,
            None => t.shallow_clone(),
        })
    }

    /// The affine parameters this forward uses: `[C]` or `[T, C]`.
    fn affine(&self, scope: &mut Scope<'_>) -> Result<(Tensor, Tensor)> {
        let row = self.row(scope);
        Ok((
            Self::at_row(&scope.param("weight")?, row)?,
            Self::at_row(&scope.param("bias")?, row)?,
        ))
    }

    /// How task-batched inputs run: one batch_norm per task, or one for all tasks folded into
    /// the channels (default [`ConvTasks::Auto`]: folded on CUDA, per task elsewhere).
    pub fn task_batching(mut self, how: ConvTasks) -> BatchNorm2d {
        self.tasks = how;
        self
    }
}

crate::setters!(BatchNorm2d {
    /// Added to the variance (default 1e-5).
    eps: f64,
    /// Weight of the new batch in the running statistics (default 0.1).
    momentum: f64,
});

impl BatchNorm2d {
    /// The running statistic `name`, `[C]` or `[T, C]` (with the steps' rows before C for a
    /// per-step layer), or its default `fill` if absent.
    fn running(
        &self,
        scope: &mut Scope<'_>,
        name: &str,
        fill: f64,
        like: &Tensor,
    ) -> Result<Tensor> {
        let mut shape = Vec::new();
        if let Some(t) = scope.tasks() {
            shape.push(t);
        }
        shape.extend(self.steps);
        shape.push(self.channels);
        let stored = scope
            .state()
            .and_then(|s| s.get(name))
            .map(Tensor::shallow_clone);
        match stored {
            Some(s) if s.size() == shape => Ok(s),
            Some(s) => Err(Error::Shape {
                op: "BatchNorm2d running statistics",
                expected: format!("{shape:?} for `{name}`"),
                got: s.size(),
            }),
            None => Ok(Tensor::f_full(
                shape.as_slice(),
                fill,
                (like.kind(), like.device()),
            )?),
        }
    }
}

impl Module for BatchNorm2d {
    fn param_defs(&self) -> Vec<ParamDef> {
        let shape: Vec<i64> = self.steps.into_iter().chain([self.channels]).collect();
        vec![
            ParamDef::new("weight", &shape, Init::Constant(1.0)),
            ParamDef::new("bias", &shape, Init::Constant(0.0)),
        ]
    }

    /// `[B, C, H, W]`, or task-batched `[T, B, C, H, W]` with statistics per task: one
    /// batch_norm per task on views of x ([`ConvTasks::PerTask`], the CPU default), or one for
    /// all tasks with the tasks moved into the channels, `[B, T·C, H, W]`
    /// ([`ConvTasks::Grouped`], the CUDA default: one kernel, at the price of two transposing
    /// copies, which on the CPU cost more than the per-task calls save).
    fn forward_scoped(&self, scope: &mut Scope<'_>, x: &Tensor) -> Result<Tensor> {
        let per_task = check_maps(scope, "BatchNorm2d", x, self.channels)?;
        // Batch statistics over B, H, W ([B, C, H, W]) or over each task's B, H, W.
        let dims: &[i64] = if scope.tasks().is_some() {
            &[1, 3, 4]
        } else {
            &[0, 2, 3]
        };
        if let Some(support) = scope.support() {
            return self.support_norm(scope, x, dims, support);
        }
        let inputs = self.prepare(scope, x, || batch_moments(x, dims))?;
        let Some(tasks) = scope.tasks() else {
            return self.norm(x, &inputs.per_task(None)?[0]);
        };
        let (b, c, h, w) = (per_task[0], per_task[1], per_task[2], per_task[3]);
        if !self.tasks.per_task(x) {
            let y = self.norm(
                &maybe_channels_last(x.f_transpose(0, 1)?.f_reshape([b, tasks * c, h, w])?)?,
                &inputs.folded(tasks * c)?,
            )?;
            return Ok(y.f_reshape([b, tasks, c, h, w])?.f_transpose(0, 1)?);
        }
        let xs = x.f_flatten(0, 1)?.f_split(b, 0)?;
        let norms = inputs.per_task(Some(tasks))?;
        let mut ys = Vec::with_capacity(tasks as usize);
        for (xt, nt) in xs.iter().zip(&norms) {
            ys.push(self.norm(xt, nt)?);
        }
        Ok(Tensor::f_cat(&ys, 0)?.f_view(x.size().as_slice())?)
    }
}

impl BatchNorm2d {
    /// Support-only statistics: `x` normalised per task with the mean and biased variance
    /// (over `dims`) of its first `support` examples, then the affine map. Differentiable.
    fn support_norm(
        &self,
        scope: &mut Scope<'_>,
        x: &Tensor,
        dims: &[i64],
        support: i64,
    ) -> Result<Tensor> {
        let batch_dim = dims[0];
        let s = x.f_narrow(batch_dim, 0, support)?;
        let mean = s.f_mean_dim(dims, true, Some(x.kind()))?;
        let var = s.f_var_dim(dims, false, true)?;
        let mut shape = vec![1; x.dim()];
        shape[batch_dim as usize + 1] = self.channels;
        if let Some(t) = scope.tasks() {
            shape[0] = t;
        }
        let (weight, bias) = self.affine(scope)?;
        let weight = weight.f_reshape(shape.as_slice())?;
        let bias = bias.f_reshape(shape.as_slice())?;
        let normed = x
            .f_sub(&mean)?
            .f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(normed.f_mul(&weight)?.f_add(&bias)?)
    }
}

/// What one forward pass normalises with: the affine parameters (`[C]` or `[T, C]`) and, when
/// it uses running statistics, those.
pub(super) struct NormInputs {
    weight: Tensor,
    bias: Tensor,
    running: Option<(Tensor, Tensor)>,
}

/// One task's (or one folded call's) share of [`NormInputs`].
pub(super) struct Norm {
    weight: Tensor,
    bias: Tensor,
    running: Option<(Tensor, Tensor)>,
}

impl NormInputs {
    /// One [`Norm`] per task (`Some(T)`), or the whole as one.
    pub(super) fn per_task(&self, tasks: Option<i64>) -> Result<Vec<Norm>> {
        let Some(tasks) = tasks else {
            return Ok(vec![Norm {
                weight: self.weight.shallow_clone(),
                bias: self.bias.shallow_clone(),
                running: self
                    .running
                    .as_ref()
                    .map(|(m, v)| (m.shallow_clone(), v.shallow_clone())),
            }]);
        };
        let (ws, bs) = (self.weight.f_unbind(0)?, self.bias.f_unbind(0)?);
        let running: Vec<Option<(Tensor, Tensor)>> = match &self.running {
            Some((m, v)) => m
                .f_unbind(0)?
                .into_iter()
                .zip(v.f_unbind(0)?)
                .map(Some)
                .collect(),
            None => (0..tasks).map(|_| None).collect(),
        };
        Ok(ws
            .into_iter()
            .zip(bs)
            .zip(running)
            .map(|((weight, bias), running)| Norm {
                weight,
                bias,
                running,
            })
            .collect())
    }

    /// The tasks folded into `channels` = T·C channels.
    fn folded(&self, channels: i64) -> Result<Norm> {
        let fold = |t: &Tensor| t.f_reshape([channels]);
        Ok(Norm {
            weight: fold(&self.weight)?,
            bias: fold(&self.bias)?,
            running: match &self.running {
                Some((m, v)) => Some((fold(m)?, fold(v)?)),
                None => None,
            },
        })
    }
}

impl BatchNorm2d {
    /// Reads the affine parameters and decides the statistics: batch statistics in training or
    /// without a state (then, with a state, the running statistics are blended with
    /// `moments()` = the batch's (mean, unbiased variance), as PyTorch does); else the running
    /// statistics. `like` gives the default statistics' dtype and device.
    pub(super) fn prepare(
        &self,
        scope: &mut Scope<'_>,
        like: &Tensor,
        moments: impl FnOnce() -> Result<(Tensor, Tensor)>,
    ) -> Result<NormInputs> {
        let (weight, bias) = self.affine(scope)?;
        let row = self.row(scope);
        let mean_name = scope.name("running_mean");
        let var_name = scope.name("running_var");
        let use_batch_stats = scope.train() || scope.state().is_none();
        let running = if use_batch_stats {
            if scope.state().is_some() {
                let old_mean = self.running(scope, &mean_name, 0.0, like)?;
                let old_var = self.running(scope, &var_name, 1.0, like)?;
                let (batch_mean, batch_var) = moments()?;
                let m = self.momentum;
                // The blend of the row this step uses, written back into its place.
                let blend = |old: &Tensor, batch: &Tensor| -> Result<Tensor> {
                    let at = Self::at_row(old, row)?;
                    let new = at
                        .f_mul_scalar(1.0 - m)?
                        .f_add(&batch.f_reshape(at.size().as_slice())?.f_mul_scalar(m)?)?;
                    Ok(match row {
                        Some(r) => old.f_select_scatter(&new, old.dim() as i64 - 2, r)?,
                        None => new,
                    })
                };
                let new_mean = blend(&old_mean, &batch_mean)?;
                let new_var = blend(&old_var, &batch_var)?;
                if let Some(state) = scope.state() {
                    state.insert(mean_name, new_mean);
                    state.insert(var_name, new_var);
                }
            }
            None
        } else {
            Some((
                Self::at_row(&self.running(scope, &mean_name, 0.0, like)?, row)?,
                Self::at_row(&self.running(scope, &var_name, 1.0, like)?, row)?,
            ))
        };
        Ok(NormInputs {
            weight,
            bias,
            running,
        })
    }

    /// libtorch's batch_norm of `[B, C, H, W]` with one [`Norm`]. With batch statistics on the
    /// CPU: runtime::kernels::batch_norm_train, the same values and derivatives with a
    /// closed-form double backward (second-order MAML differentiates BatchNorm's backward once
    /// per inner step, and libtorch's generic formula for it takes some forty operations).
    pub(super) fn norm(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        if n.running.is_none() && x.device() == tch::Device::Cpu {
            return crate::kernels::batch_norm_train(x, &n.weight, &n.bias, self.eps);
        }
        let (mean, var) = match &n.running {
            Some((m, v)) => (Some(m), Some(v)),
            None => (None, None),
        };
        Ok(x.f_batch_norm(
            Some(&n.weight),
            Some(&n.bias),
            mean,
            var,
            n.running.is_none(),
            self.momentum,
            self.eps,
            true,
        )?)
    }
}
