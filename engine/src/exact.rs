//! Exact sums of meta-gradients (`run.reproducible`): the same bits on any number of ranks,
//! workers and task chunks, in f32 and f64.
//!
//! A float sum depends on the order of its additions: ranks, workers and chunks each add up
//! their tasks first, so every split of the meta-batch rounds differently. Here every task's
//! meta-gradient is computed alone and turned into integers on one fixed-point scale shared by
//! all ranks; integers are then summed, on each rank and across ranks. Integer addition is
//! associative and commutative, so the sum is the same in any order and any grouping. The sum
//! is turned back into floats by one rounding, the same on every rank.
//!
//! The scale: one maximum all-reduce gives M = max |g| over every value of every task of the
//! global meta-batch (a maximum does not depend on order either). With M < 2^e and N ≤ 2^c
//! tasks, values are multiplied by 2^k, k = 62 − c − e, and rounded to the nearest integer.
//! Each scaled value is at most 2^(62−c) in size, so the sum of N of them is at most 2^62 and
//! never overflows i64. Multiplying by a power of two is exact in binary floating point, so the
//! only rounding is to the integer grid: each value keeps an absolute error of at most
//! 2^−(k+1) ≤ M · 2^−(62−c), i.e. 2^−57 relative to the largest value for 25 tasks. That is
//! finer than f32's own rounding (2^−24) and close to f64's (2^−53); values far below M lose
//! relative precision in f64 (a value 10^−6 · M keeps about 10^−11 relative).
//!
//! The losses, accuracies and non-finite flags travel in one slot per task (the other ranks add
//! zeros, which is exact) and are summed on every rank in task order. A rank keeps its tasks'
//! meta-gradients until the sum (tasks × meta-vector values). Nothing here prints.

use std::ops::Range;

use metaloop_runtime::comm::Communicator;
use tch::{Device, Kind, Tensor};

use crate::chunks::Partial;
use crate::host::to_f64s;
use crate::reduce::Reduced;
use crate::schedule::InnerClips;
use crate::Result;

/// The exponent k of the fixed-point scale 2^k for values of largest size `max` summed over
/// `terms` tasks (see the module's text); `None` when `max` is not finite. Zero for `max` 0.
pub fn scale_exponent(max: f64, terms: usize) -> Option<i32> {
    if !max.is_finite() {
        return None;
    }
    if max == 0.0 {
        return Some(0);
    }
    // c = ceil(log2 terms): terms ≤ 2^c.
    let c = (usize::BITS - terms.max(1).saturating_sub(1).leading_zeros()) as i32;
    Some(62 - c - bound_exponent(max.abs()))
}

/// The smallest e with `x` < 2^e, for a finite `x` > 0.
fn bound_exponent(x: f64) -> i32 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: x = mantissa · 2^−1074.
        let mantissa = bits & ((1 << 52) - 1);
        return -1074 + (64 - mantissa.leading_zeros()) as i32;
    }
    biased - 1022
}

/// `t` (f64) times 2^k, in two steps so that neither factor overflows f64: exact wherever the
/// result is a normal number (a power of two changes only the exponent).
fn times_power_of_two(t: &Tensor, k: i32) -> Result<Tensor> {
    let half = k / 2;
    Ok(t.f_mul_scalar(2f64.powi(half))?
        .f_mul_scalar(2f64.powi(k - half))?)
}

/// The values of `t` on the fixed-point grid 2^−k, as i64: `round(t · 2^k)`, ties to even.
pub fn to_fixed(t: &Tensor, k: i32) -> Result<Tensor> {
    let wide = t.f_detach()?.f_to_kind(Kind::Double)?;
    Ok(times_power_of_two(&wide, k)?
        .f_round()?
        .f_to_kind(Kind::Int64)?)
}

/// The floats of the fixed-point values `sum` (i64) on the grid 2^−k, in `kind`: one rounding
/// to f64 (above 2^53), one to `kind`; a function of the integers alone.
pub fn from_fixed(sum: &Tensor, k: i32, kind: Kind) -> Result<Tensor> {
    let wide = sum.f_to_kind(Kind::Double)?;
    Ok(times_power_of_two(&wide, -k)?.f_to_kind(kind)?)
}

/// The exact sum over dimension 0 of `rows` (`[N, m]`, any float kind) across every rank, in
/// `kind`: one maximum all-reduce for the scale, the rows on the grid as integers, an integer
/// sum here and an integer sum all-reduce. `terms` is N summed over all ranks. NaN values
/// (no scale exists) when any value of any rank is NaN or infinite.
pub fn sum_rows(
    comm: &dyn Communicator,
    rows: &Tensor,
    terms: usize,
    kind: Kind,
) -> Result<Tensor> {
    let m = rows.size().get(1).copied().unwrap_or(0);
    let local = if rows.numel() == 0 {
        0.0
    } else {
        rows.f_abs()?.f_max()?.f_double_value(&[])?
    };
    // MPI orders NaN like no other value: send +inf for anything not finite.
    let local = if local.is_finite() {
        local
    } else {
        f64::INFINITY
    };
    let mut max = Tensor::f_from_slice(&[local])?;
    comm.all_reduce_max(&mut max)?;
    let Some(k) = scale_exponent(max.f_double_value(&[0])?, terms) else {
        return Ok(Tensor::f_full([m], f64::NAN, (kind, rows.device()))?);
    };
    let mut sum = to_fixed(rows, k)?.f_sum_dim_intlist(&[0i64][..], false, Kind::Int64)?;
    comm.all_reduce_sum(&mut sum)?;
    from_fixed(&sum, k, kind)
}

/// The reduction of one reproducible iteration: `tasks` are this rank's tasks `range` of the
/// `global` ones, one [`Partial`] each, in order; `m` is the meta-vector's length.
pub(crate) fn reduce(
    comm: &dyn Communicator,
    tasks: &[Partial],
    range: Range<usize>,
    global: usize,
    m: i64,
    (kind, device): (Kind, Device),
) -> Result<Reduced> {
    let rows = if tasks.is_empty() {
        Tensor::f_zeros([0, m], (kind, device))?
    } else {
        let grads: Vec<Tensor> = tasks.iter().map(|p| p.grad.shallow_clone()).collect();
        Tensor::f_stack(&grads, 0)?
    };
    let grad = sum_rows(comm, &rows, global, kind)?;
    let mut slots = task_slots(tasks, range, global, (kind, device))?;
    comm.all_reduce_sum(&mut slots)?;
    let v = to_f64s(&slots)?;
    let g = global;
    let totals = [v[..g].iter().sum(), v[g..2 * g].iter().sum()];
    let nonfinite = (0..g).filter(|&i| v[2 * g + i] != 0.0).collect();
    let clips = InnerClips::of(&v[3 * g..4 * g], &v[4 * g..5 * g]);
    // In a fixed order, on the host: libtorch's reductions split by the thread count.
    let grad_norm = to_f64s(&grad)?.iter().map(|x| x * x).sum::<f64>().sqrt();
    Ok(Reduced {
        grad,
        totals,
        nonfinite,
        grad_norm,
        clips,
    })
}

/// `[5, global]`: each task's query loss, query accuracy, non-finite flag and inner clips
/// (count, largest norm) in its global slot, zeros in the slots of the other ranks' tasks.
fn task_slots(
    tasks: &[Partial],
    range: Range<usize>,
    global: usize,
    opts: (Kind, Device),
) -> Result<Tensor> {
    let slots = Tensor::f_zeros([5, global as i64], opts)?;
    if tasks.is_empty() {
        return Ok(slots);
    }
    let loss = Tensor::f_cat(
        &tasks
            .iter()
            .map(|p| p.per_task())
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let acc = Tensor::f_cat(&tasks.iter().map(|p| &p.sums[1]).collect::<Vec<_>>(), 0)?;
    let bad = loss.f_isfinite()?.f_logical_not()?.f_to_kind(opts.0)?;
    let clips = Tensor::f_cat(
        &tasks
            .iter()
            .map(|p| p.clips())
            .collect::<Result<Vec<_>>>()?,
        1,
    )?;
    let local = Tensor::f_cat(&[Tensor::f_stack(&[loss, acc, bad], 0)?, clips], 0)?;
    let index =
        Tensor::f_arange_start(range.start as i64, range.end as i64, (Kind::Int64, opts.1))?;
    Ok(slots.f_index_copy(1, &index, &local)?)
}

#[cfg(test)]
#[path = "exact_tests.rs"]
mod tests;
