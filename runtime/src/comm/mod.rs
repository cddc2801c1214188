//! Communication between ranks: the one module that touches MPI and NCCL.
//!
//! A [`Communicator`] sums flat tensors across ranks, broadcasts them and synchronises. The meta-
//! gradient of one iteration is one flat buffer, so one `all_reduce_sum` per iteration suffices.
//! Implementations: [`Local`] (one rank), [`Mpi`] (rsmpi over Open MPI, host buffers; CUDA tensors
//! are staged through host memory) and [`Nccl`] (cudarc's NCCL on CUDA tensors in place, the
//! library loaded at run time, CPU tensors and barriers through its [`Mpi`]).
//! Nothing outside this module may call MPI or NCCL; nothing here knows about models or datasets.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
#[cfg(feature = "nccl")]
pub use self::nccl::{Nccl, NCCL_LIBRARY_ENV};

use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Collective operations over the ranks of one job.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Sums `t` over all ranks, in place; every rank ends with the same sum.
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()>;
    /// Overwrites `t` on every rank with its value on rank `root`.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()>;
    /// Waits until every rank has reached this call.
    fn barrier(&self) -> Result<()>;
}

/// One rank alone: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _t: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _t: &mut Tensor, root: usize) -> Result<()> {
        check_root("broadcast", root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// An error unless `root` is one of the `size` ranks.
fn check_root(op: &str, root: usize, size: usize) -> Result<()> {
    if root >= size {
        let ranks = if size == 1 { "rank" } else { "ranks" };
        return Err(Error::Comm(format!(
            "{op}: root {root} out of range for {size} {ranks}"
        )));
    }
    Ok(())
}

/// The element types that travel between ranks through host memory: the float kinds of parameters.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Buffer {
    /// Copies a tensor (any device) into host memory.
    fn from_tensor(op: &'static str, t: &Tensor) -> Result<Self> {
        let flat = t
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_view([-1])?;
        match t.kind() {
            Kind::Float => Ok(Buffer::F32(Vec::<f32>::try_from(&flat)?)),
            Kind::Double => Ok(Buffer::F64(Vec::<f64>::try_from(&flat)?)),
            kind => Err(Error::Kind {
                op,
                kind,
                expected: "f32 or f64",
            }),
        }
    }

    /// Copies host memory back into `t`, keeping its device and shape.
    fn copy_into(&self, t: &mut Tensor) -> Result<()> {
        let host = match self {
            Buffer::F32(v) => Tensor::f_from_slice(v)?,
            Buffer::F64(v) => Tensor::f_from_slice(v)?,
        };
        let host = host.f_view(t.size().as_slice())?.f_to_device(t.device())?;
        tch::no_grad(|| t.f_copy_(&host))?;
        Ok(())
    }
}
