//! Helpers that several layers share: shape checks, task folding and splitting, channels-last
//! order, pooling and batch moments. Below every layer and above only [`Scope`]: a layer may use
//! it, it uses no layer.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tch::{Device, Tensor};

use super::module::Scope;
use crate::Result;

/// How a task-batched convolution (`[T, P]` parameters) runs its T tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvTasks {
    /// The process-wide choice ([`set_conv_tasks`], `run.conv_tasks`) when one was made; else
    /// [`ConvTasks::Grouped`] on CUDA and [`ConvTasks::PerTask`] elsewhere. On CPU a loop over
    /// tasks is faster than one grouped convolution (libtorch's CPU kernels for grouped
    /// convolutions are slow; benches/README.md), while on CUDA one grouped kernel beats T
    /// launches.
    #[default]
    Auto,
    /// One convolution with the tasks folded into the channels (`groups = T`).
    Grouped,
    /// One convolution per task, results stacked.
    PerTask,
    /// The tasks folded into the batch with per-task weights: im2col of every task's input, then
    /// one batched matrix product `[T, O, C·k·k] × [T, B, C·k·k, L]` (cuBLAS on CUDA) instead of
    /// cuDNN's grouped kernel. BatchNorm layers run folded, as with [`ConvTasks::Grouped`].
    Gemm,
}

/// The process-wide choice behind [`ConvTasks::Auto`]: 0 none, else 1 + the variant's index.
static CHOSEN: AtomicU8 = AtomicU8::new(0);
/// Whether folded (grouped) convolutions run in channels-last memory order ([`set_channels_last`]).
static CHANNELS_LAST: AtomicBool = AtomicBool::new(false);

/// Makes `how` what [`ConvTasks::Auto`] means in this process (`run.conv_tasks`); `Auto` restores
/// the device's default. Layers built with an explicit choice keep theirs.
pub fn set_conv_tasks(how: ConvTasks) {
    let code = match how {
        ConvTasks::Auto => 0,
        ConvTasks::Grouped => 1,
        ConvTasks::PerTask => 2,
        ConvTasks::Gemm => 3,
    };
    CHOSEN.store(code, Ordering::Relaxed);
}

/// Runs the folded convolutions ([`ConvTasks::Grouped`]) and their BatchNorm in channels-last
/// memory order (`run.channels_last`): inputs, weights and outputs NHWC in memory, as cuDNN's
/// fastest kernels want on tensor cores. Values are unchanged; only the layout (and with it the
/// kernel libtorch picks) differs. The per-task CPU path is channels-last already.
pub fn set_channels_last(on: bool) {
    CHANNELS_LAST.store(on, Ordering::Relaxed);
}

/// Whether [`set_channels_last`] is on.
pub(super) fn folded_channels_last() -> bool {
    CHANNELS_LAST.load(Ordering::Relaxed)
}

impl ConvTasks {
    /// `Auto` replaced by the process-wide choice, when there is one.
    pub(super) fn resolved(self) -> ConvTasks {
        match (self, CHOSEN.load(Ordering::Relaxed)) {
            (ConvTasks::Auto, 1) => ConvTasks::Grouped,
            (ConvTasks::Auto, 2) => ConvTasks::PerTask,
            (ConvTasks::Auto, 3) => ConvTasks::Gemm,
            (how, _) => how,
        }
    }

    /// True when task-batched input `x` runs one kernel per task.
    pub(super) fn per_task(self, x: &Tensor) -> bool {
        match self.resolved() {
            ConvTasks::Grouped | ConvTasks::Gemm => false,
            ConvTasks::PerTask => true,
            ConvTasks::Auto => !matches!(x.device(), Device::Cuda(_)),
        }
    }

    /// True when task-batched convolutions run as batched matrix products.
    pub(super) fn gemm(self) -> bool {
        self.resolved() == ConvTasks::Gemm
    }
}

/// `x` (`[N, C, H, W]`) in channels-last memory order when [`set_channels_last`] is on.
pub(super) fn maybe_channels_last(x: Tensor) -> Result<Tensor> {
    if folded_channels_last() {
        channels_last(&x, &[0, 2, 3, 1], &[0, 3, 1, 2])
    } else {
        Ok(x)
    }
}

/// Runs `f` on a `[N, ...]` tensor made by folding the task dimension of `x` (`[T, B, ...]`)
/// into the batch, then unfolds the result back to `[T, B, ...]`. Without tasks, `f(x)`.
pub(super) fn fold_tasks(
    tasks: Option<i64>,
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match tasks {
        None => f(x),
        Some(t) => {
            let y = f(&x.f_flatten(0, 1)?)?;
            let mut shape = vec![t, -1];
            shape.extend_from_slice(&y.size()[1..]);
            Ok(y.f_reshape(shape.as_slice())?)
        }
    }
}

/// `pool` (one of libtorch's 2-d poolings) on `[B, C, H, W]` maps; task-batched: tasks folded into
/// the batch. `op` names the layer in a shape error.
pub(super) fn pool2d(
    scope: &Scope<'_>,
    op: &'static str,
    x: &Tensor,
    pool: impl FnOnce(&Tensor) -> std::result::Result<Tensor, tch::TchError>,
) -> Result<Tensor> {
    scope.check_input(op, x, 4, "[batch, channels, height, width]")?;
    fold_tasks(scope.tasks(), x, |x| Ok(pool(x)?))
}

/// A task-batched convolution's per-task pieces: each task's `[B, C, H, W]` input and
/// `[O, C, k, k]` weights as channels-last views (split and unbind: their backward is one
/// concatenation, where a `select` per task would zero-fill a whole `[T, ...]` gradient each),
/// and its bias.
pub(super) type TaskPieces = (Vec<Tensor>, Vec<Tensor>, Vec<Option<Tensor>>);

pub(super) fn split_tasks(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    tasks: i64,
    batch: i64,
) -> Result<TaskPieces> {
    let xs = channels_last(&x.f_flatten(0, 1)?, &[0, 2, 3, 1], &[0, 3, 1, 2])?.f_split(batch, 0)?;
    let ws = channels_last(weight, &[0, 1, 3, 4, 2], &[0, 1, 4, 2, 3])?.f_unbind(0)?;
    let bs = match bias {
        Some(b) => b.f_unbind(0)?.into_iter().map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    };
    Ok((xs, ws, bs))
}

/// Joins T per-task `[B, C, H, W]` outputs into `[T, B, C, H, W]` with one concatenation, in
/// channels-last memory order whatever order the outputs have.
pub(super) fn join_tasks(outs: &[Tensor], tasks: i64, batch: i64) -> Result<Tensor> {
    let nhwc = outs
        .iter()
        .map(|y| y.f_permute([0, 2, 3, 1]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let y = Tensor::f_cat(&nhwc, 0)?.f_permute([0, 3, 1, 2])?;
    let mut shape = vec![tasks, batch];
    shape.extend_from_slice(&y.size()[1..]);
    Ok(y.f_view(shape.as_slice())?)
}

/// Errors unless `x` is `[batch, channels, height, width]` (task-batched: one more leading
/// dimension) with `channels` channels; returns the per-task shape.
pub(super) fn check_maps(
    scope: &Scope<'_>,
    op: &'static str,
    x: &Tensor,
    channels: i64,
) -> Result<Vec<i64>> {
    let expected = format!("[batch, {channels}, height, width]");
    let per_task = scope.check_input(op, x, 4, &expected)?;
    if per_task[1] != channels {
        return Err(crate::Error::Shape {
            op,
            expected,
            got: x.size(),
        });
    }
    Ok(per_task)
}

/// `x` in channels-last memory order with its logical shape unchanged: `to` moves the channel
/// dimension last, `back` undoes it. No copy when x already is channels-last.
pub(super) fn channels_last(x: &Tensor, to: &[i64], back: &[i64]) -> Result<Tensor> {
    Ok(x.f_permute(to)?.f_contiguous()?.f_permute(back)?)
}

/// The per-channel mean and unbiased variance of `x` over `dims`, without autograd.
pub(super) fn batch_moments(x: &Tensor, dims: &[i64]) -> Result<(Tensor, Tensor)> {
    let xd = x.f_detach()?;
    Ok((
        xd.f_mean_dim(dims, false, Some(xd.kind()))?,
        xd.f_var_dim(dims, true, false)?,
    ))
}
