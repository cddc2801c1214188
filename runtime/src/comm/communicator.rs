//! The [`Communicator`] trait, [`Local`] (one rank) and what every implementation shares: the
//! root check, the host buffer types and the checksum comparison. Below `mpi` and `nccl`.

use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Collective operations over the ranks of one job.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Sums `t` over all ranks, in place; every rank ends with the same sum. `t` is f32, f64 or
    /// i64; an i64 sum is exact and the same in any order (integer addition is associative),
    /// as long as it does not overflow.
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()>;
    /// The elementwise maximum of `t` (f32 or f64) over all ranks, in place; every rank ends with
    /// the same values. A maximum does not depend on the order of the ranks. NaN is not ordered:
    /// callers send +inf for it.
    fn all_reduce_max(&self, t: &mut Tensor) -> Result<()>;
    /// Overwrites `t` on every rank with its value on rank `root`.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()>;
    /// Waits until every rank has reached this call.
    fn barrier(&self) -> Result<()>;
    /// Overwrites `bytes` (any length) on every rank with their value on rank `root`: a
    /// checkpoint that only rank 0 can read, for instance. This default goes through
    /// [`Communicator::broadcast`] (the length, then one f64 per byte); `Mpi` sends the bytes.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root("broadcast_bytes", root, self.size())?;
        let mut len = Tensor::f_from_slice(&[bytes.len() as f64])?;
        self.broadcast(&mut len, root)?;
        let len = len.f_double_value(&[0])? as usize;
        bytes.resize(len, 0);
        let wide: Vec<f64> = bytes.iter().map(|&b| f64::from(b)).collect();
        let mut t = Tensor::f_from_slice(&wide)?;
        self.broadcast(&mut t, root)?;
        let wide = Vec::<f64>::try_from(&t)?;
        for (b, w) in bytes.iter_mut().zip(wide) {
            *b = w as u8;
        }
        Ok(())
    }
}

/// True when two checksums of the same values differ by more than `rel_tol` (relative to 1 +
/// |b|), or when exactly one of a pair is NaN, or both are but the other values differ. NaN on
/// every rank alike is agreement (the ranks still train the same model, if a broken one).
pub fn checksums_differ(a: &[f64], b: &[f64], rel_tol: f64) -> bool {
    a.len() != b.len()
        || a.iter().zip(b).any(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                x.is_nan() != y.is_nan()
            } else if x.is_infinite() || y.is_infinite() {
                x != y
            } else {
                (x - y).abs() > rel_tol * (1.0 + y.abs())
            }
        })
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
    fn all_reduce_max(&self, _t: &mut Tensor) -> Result<()> {
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
pub(super) fn check_root(op: &str, root: usize, size: usize) -> Result<()> {
    if root >= size {
        let ranks = if size == 1 { "rank" } else { "ranks" };
        return Err(Error::Comm(format!(
            "{op}: root {root} out of range for {size} {ranks}"
        )));
    }
    Ok(())
}

/// The element types that travel between ranks through host memory: the float kinds of
/// parameters, and i64 for exact sums (fixed-point meta-gradients).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(super) enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Buffer {
    /// Copies a tensor (any device) into host memory.
    pub(super) fn from_tensor(op: &'static str, t: &Tensor) -> Result<Self> {
        let flat = t
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_view([-1])?;
        match t.kind() {
            Kind::Float => Ok(Buffer::F32(Vec::<f32>::try_from(&flat)?)),
            Kind::Double => Ok(Buffer::F64(Vec::<f64>::try_from(&flat)?)),
            Kind::Int64 => Ok(Buffer::I64(Vec::<i64>::try_from(&flat)?)),
            kind => Err(Error::Kind {
                op,
                kind,
                expected: "f32, f64 or i64",
            }),
        }
    }

    /// Copies host memory back into `t`, keeping its device and shape.
    pub(super) fn copy_into(&self, t: &mut Tensor) -> Result<()> {
        let host = match self {
            Buffer::F32(v) => Tensor::f_from_slice(v)?,
            Buffer::F64(v) => Tensor::f_from_slice(v)?,
            Buffer::I64(v) => Tensor::f_from_slice(v)?,
        };
        let host = host.f_view(t.size().as_slice())?.f_to_device(t.device())?;
        tch::no_grad(|| t.f_copy_(&host))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_that_differ_by_a_nan_differ() {
        let tol = 1e-12;
        assert!(!checksums_differ(&[1.0, 2.0], &[1.0, 2.0], tol));
        assert!(checksums_differ(&[1.0, 2.0], &[1.0, 2.5], tol));
        // `(a - b).abs() > tol` is false when either is NaN: the old comparison let these pass.
        assert!(checksums_differ(&[f64::NAN, 2.0], &[1.0, 2.0], tol));
        assert!(checksums_differ(&[1.0, 2.0], &[f64::NAN, 2.0], tol));
        assert!(!checksums_differ(&[f64::NAN, 2.0], &[f64::NAN, 2.0], tol));
        assert!(checksums_differ(&[f64::INFINITY], &[1.0], tol));
        assert!(checksums_differ(&[1.0], &[1.0, 2.0], tol));
    }

    #[test]
    fn local_reductions_keep_the_values() {
        let mut t = Tensor::from_slice(&[3i64, -4]);
        Local.all_reduce_sum(&mut t).unwrap();
        Local.all_reduce_max(&mut t).unwrap();
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![3, -4]);
    }

    #[test]
    fn local_broadcast_of_bytes_keeps_them() {
        let mut b = vec![1u8, 2, 255];
        Local.broadcast_bytes(&mut b, 0).unwrap();
        assert_eq!(b, vec![1, 2, 255]);
        assert!(Local.broadcast_bytes(&mut b, 1).is_err());
    }
}
