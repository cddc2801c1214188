//! Communication between ranks: the one module that touches MPI (and, later, NCCL).
//!
//! A [`Communicator`] sums flat tensors across ranks, broadcasts them and synchronises. The meta-
//! gradient of one iteration is one flat buffer, so one `all_reduce_sum` per iteration suffices.
//! Nothing outside this module may call MPI.

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
        if root != 0 {
            return Err(Error::Comm(format!(
                "broadcast: root {root} out of range for 1 rank"
            )));
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// The element types that travel between ranks: the float kinds of parameters.
enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

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

#[cfg(feature = "mpi")]
pub use self::mpi_comm::Mpi;

#[cfg(feature = "mpi")]
mod mpi_comm {
    use super::{Buffer, Communicator};
    use crate::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::{CommunicatorCollectives, Root};
    use tch::Tensor;

    /// MPI over Open MPI (rsmpi), on host buffers: CUDA tensors are staged through host memory.
    pub struct Mpi {
        // Dropping the universe finalizes MPI, so it lives as long as the communicator.
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
    }

    impl Mpi {
        /// Initializes MPI for this process. MPI can be initialized once per process.
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize()
                .ok_or_else(|| Error::Comm("MPI was already initialized in this process".into()))?;
            let world = universe.world();
            Ok(Mpi {
                _universe: universe,
                world,
            })
        }
    }

    impl Communicator for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
            let reduced = match Buffer::from_tensor("all_reduce_sum", t)? {
                Buffer::F32(send) => {
                    let mut recv = vec![0f32; send.len()];
                    self.world
                        .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                    Buffer::F32(recv)
                }
                Buffer::F64(send) => {
                    let mut recv = vec![0f64; send.len()];
                    self.world
                        .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                    Buffer::F64(recv)
                }
            };
            reduced.copy_into(t)
        }
        fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
            if root >= self.size() {
                return Err(Error::Comm(format!(
                    "broadcast: root {root} out of range for {} ranks",
                    self.size()
                )));
            }
            let mut buf = Buffer::from_tensor("broadcast", t)?;
            let process = self.world.process_at_rank(root as i32);
            match &mut buf {
                Buffer::F32(v) => process.broadcast_into(&mut v[..]),
                Buffer::F64(v) => process.broadcast_into(&mut v[..]),
            }
            buf.copy_into(t)
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
    }
}
