//! Host copies of tensors: snapshots for files and numbers for reports.

use tch::{Device, Kind, Tensor};

use crate::Result;

/// A detached, contiguous CPU copy: a snapshot (on the CPU, moving and detaching alone would
/// alias the live tensor, which later steps change).
pub(crate) fn cpu(t: &Tensor) -> Result<Tensor> {
    let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let mut copy = t.f_empty_like()?;
    copy.f_copy_(&t)?;
    Ok(copy)
}

/// The values of `t` as f64s (flattened).
pub(crate) fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &t.f_detach()?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?
            .f_reshape([-1])?,
    )?)
}
