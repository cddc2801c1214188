//! BatchNorm running statistics for `eval.batchnorm = "running"`: the trainer keeps them beside
//! θ0, and validation and meta-test normalise with them (PyTorch's eval mode), one row per inner
//! step with `model.per_step_batchnorm` (MAML++'s BNRS, Antoniou et al. 2019).
//!
//! How they are kept: in every training iteration each task starts from the running statistics
//! of the iteration's start, and each support forward of its inner loop (step s) blends that
//! batch's statistics into them (row s with per-step BatchNorm) with BatchNorm's momentum, as
//! PyTorch's training forward does. The new running statistics are the mean of the tasks' results
//! over the global meta-batch: one float all-reduce, or an exact one with `run.reproducible`, so
//! they do not depend on the ranks, workers or task chunks beyond rounding (and not at all with
//! `run.reproducible`). Query forwards leave them alone. Nothing here prints.

use std::sync::Mutex;

use metaloop_runtime::comm::Communicator;
use metaloop_runtime::nn::BnState;
use metaloop_runtime::Layout;
use tch::{Device, Kind, Tensor};

use crate::{exact, Result};

/// Named running statistics, in name order: "x.running_mean" and "x.running_var" of every
/// BatchNorm "x", shaped like its weight (`[C]`, or `[steps, C]` per step).
pub type Running = Vec<(String, Tensor)>;

/// The running statistics a trainer of `cfg` keeps: [`initial`] with `eval.batchnorm =
/// "running"`, else none.
pub(crate) fn for_config(
    cfg: &crate::config::TrainConfig,
    layout: &Layout,
    opts: (Kind, Device),
) -> Result<Running> {
    if cfg.eval.batchnorm == crate::config::EvalBatchNorm::Running {
        initial(layout, opts)
    } else {
        Ok(Vec::new())
    }
}

/// A second handle on the same tensors.
pub(crate) fn shallow(running: &Running) -> Running {
    running
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// The running statistics at their defaults (mean 0, variance 1, as a fresh
/// `nn.BatchNorm2d`) for every BatchNorm of `layout`: each module whose "weight" and "bias"
/// share one shape of one or two dimensions.
pub(crate) fn initial(layout: &Layout, opts: (Kind, Device)) -> Result<Running> {
    let mut out = Vec::new();
    for name in layout.names() {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let (Some(w), Some(b)) = (layout.get(name), layout.get(&format!("{module}.bias"))) else {
            continue;
        };
        if w.shape != b.shape || !(1..=2).contains(&w.shape.len()) {
            continue;
        }
        out.push((
            format!("{module}.running_mean"),
            Tensor::f_zeros(w.shape.as_slice(), opts)?,
        ));
        out.push((
            format!("{module}.running_var"),
            Tensor::f_ones(w.shape.as_slice(), opts)?,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `running` with every tensor repeated for `tasks` tasks (`[T, ...]`), as a [`BnState`].
pub(crate) fn per_task(
    running: &Running,
    tasks: i64,
) -> std::result::Result<BnState, tch::TchError> {
    let mut state = BnState::new();
    for (name, t) in running {
        let mut reps = vec![tasks];
        reps.extend(std::iter::repeat_n(1, t.dim()));
        state.insert(name.clone(), t.f_unsqueeze(0)?.f_repeat(reps.as_slice())?);
    }
    Ok(state)
}

/// One chunk's running statistics while its inner loops run: the iteration's start values, and
/// the chunk's tasks' own once the first support forward made them.
#[derive(Debug)]
pub struct Tracker {
    start: Running,
    tasks: Mutex<Option<BnState>>,
}

impl Tracker {
    pub(crate) fn new(start: &Running) -> Tracker {
        Tracker {
            start: shallow(start),
            tasks: Mutex::new(None),
        }
    }

    /// Runs `f` with the tasks' statistics (`tasks` rows, from the start values on first use).
    pub(crate) fn with_state<R>(
        &self,
        tasks: i64,
        f: impl FnOnce(&mut BnState) -> metaloop_runtime::Result<R>,
    ) -> metaloop_runtime::Result<R> {
        let mut guard = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(per_task(&self.start, tasks)?);
        }
        f(guard.as_mut().expect("set just above"))
    }

    /// Each task's statistics as one row, `[T, n]` in name order (detached); `None` when no
    /// support forward ran.
    pub(crate) fn rows(&self) -> Result<Option<Tensor>> {
        let guard = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = guard.as_ref() else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        for (name, _) in &self.start {
            let t = state.get(name).ok_or_else(|| {
                crate::Error::State(format!("running statistic `{name}` was not kept"))
            })?;
            parts.push(t.f_detach()?.f_flatten(1, -1)?);
        }
        Ok(Some(Tensor::f_cat(&parts, 1)?))
    }
}

/// The new running statistics: the mean over the `global` tasks of every rank's task `rows`
/// (`[N, n]` each, N the rank's tasks; `n` values in all). Exact with `exact`. Collective.
pub(crate) fn reduce(
    comm: &dyn Communicator,
    rows: Vec<Tensor>,
    n: i64,
    global: usize,
    exact: bool,
    opts: (Kind, Device),
) -> Result<Tensor> {
    let rows = if rows.is_empty() {
        Tensor::f_zeros([0, n], opts)?
    } else {
        Tensor::f_cat(&rows, 0)?
    };
    let sum = if exact {
        exact::sum_rows(comm, &rows, global, opts.0)?
    } else {
        let mut sum = rows.f_sum_dim_intlist(&[0i64][..], false, opts.0)?;
        comm.all_reduce_sum(&mut sum)?;
        sum
    };
    Ok(sum.f_div_scalar(global as f64)?)
}

/// `flat` cut into `like`'s names and shapes.
pub(crate) fn unflatten(flat: &Tensor, like: &Running) -> Result<Running> {
    let mut offset = 0;
    let mut out = Vec::with_capacity(like.len());
    for (name, t) in like {
        let n = t.numel() as i64;
        let v = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
        out.push((name.clone(), v.f_contiguous()?));
        offset += n;
    }
    Ok(out)
}

/// The number of values in `running`.
pub(crate) fn numel(running: &Running) -> i64 {
    running.iter().map(|(_, t)| t.numel() as i64).sum()
}

#[cfg(test)]
#[path = "running_tests.rs"]
mod tests;
