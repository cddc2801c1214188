//! The all-reduce of one outer iteration: what every rank gets from it ([`Reduced`]). The float
//! path ([`float`]) sums the meta-gradient, [Σ loss, Σ accuracy], the non-finite flags and the
//! inner clips of the tasks in one buffer; its result depends on how the tasks were split, in the last bits.
//! `run.reproducible` takes engine::exact instead. Nothing here prints.

use std::ops::Range;

use metaloop_runtime::comm::Communicator;
use tch::{Device, Kind, Tensor};

use crate::chunks::Partial;
use crate::host::to_f64s;
use crate::schedule::InnerClips;
use crate::Result;

/// What the all-reduce of one iteration gives every rank.
pub(crate) struct Reduced {
    /// The meta-gradient, summed over the global meta-batch (each term already divided by it).
    pub(crate) grad: Tensor,
    /// [Σ query loss, Σ query accuracy] over the global meta-batch.
    pub(crate) totals: [f64; 2],
    /// The global indices of the tasks with a non-finite query loss.
    pub(crate) nonfinite: Vec<usize>,
    /// The meta-gradient's L2 norm.
    pub(crate) grad_norm: f64,
    /// The inner clips over the global meta-batch.
    pub(crate) clips: InnerClips,
}

/// One float all-reduce of this rank's `parts` (its tasks `range` of `global`; `m` values in
/// the meta-vector): the meta-gradient, [Σ loss, Σ accuracy], one non-finite flag per task, and
/// per task its inner clips (count, largest norm; each task in its own slot, so the largest
/// norm over ranks is read off the sum).
pub(crate) fn float(
    comm: &dyn Communicator,
    parts: Vec<Partial>,
    range: Range<usize>,
    global: usize,
    m: i64,
    opts: (Kind, Device),
) -> Result<Reduced> {
    let g = global as i64;
    let mut flags = Tensor::f_zeros([g], opts)?;
    let mut clips = Tensor::f_zeros([2, g], opts)?;
    let mut buffer = if parts.is_empty() {
        Tensor::f_cat(
            &[
                Tensor::f_zeros([m + 2], opts)?,
                flags,
                clips.f_reshape([-1])?,
            ],
            0,
        )?
    } else {
        let part = Partial::sum(parts)?;
        let bad = part
            .per_task()?
            .f_isfinite()?
            .f_logical_not()?
            .f_to_kind(opts.0)?;
        let (start, end) = (range.start as i64, range.end as i64);
        let index = Tensor::f_arange_start(start, end, (Kind::Int64, opts.1))?;
        flags = flags.f_index_copy(0, &index, &bad)?;
        clips = clips.f_index_copy(1, &index, &part.clips()?)?;
        let [loss, acc] = part.sums;
        Tensor::f_cat(&[part.grad, loss, acc, flags, clips.f_reshape([-1])?], 0)?
    };
    comm.all_reduce_sum(&mut buffer)?;
    let grad = buffer.f_narrow(0, 0, m)?;
    let totals = to_f64s(&buffer.f_narrow(0, m, 2)?)?;
    let nonfinite = to_f64s(&buffer.f_narrow(0, m + 2, g)?)?
        .iter()
        .enumerate()
        .filter(|(_, f)| **f != 0.0)
        .map(|(i, _)| i)
        .collect();
    let grad_norm = grad.f_norm()?.f_double_value(&[])?;
    let slots = to_f64s(&buffer.f_narrow(0, m + 2 + g, 2 * g)?)?;
    let (counts, largest) = slots.split_at(global);
    Ok(Reduced {
        grad,
        totals: [totals[0], totals[1]],
        nonfinite,
        grad_norm,
        clips: InnerClips::of(counts, largest),
    })
}
