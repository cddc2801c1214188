//! `Mpi`: rsmpi over Open MPI, on host buffers. CUDA tensors are staged through host memory, so it
//! works with any MPI, CUDA-aware or not. It must stay the only place that calls MPI (with
//! `comm::nccl`, which uses it to agree on NCCL's unique id).

use super::{check_root, Buffer, Communicator};
use crate::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use tch::Tensor;

/// MPI over Open MPI (rsmpi), on host buffers: CUDA tensors are staged through host memory.
pub struct Mpi {
    world: SimpleCommunicator,
    // The ranks that share this rank's node (MPI_COMM_TYPE_SHARED): the local rank picks the GPU.
    local_rank: usize,
    local_size: usize,
    // Dropping the universe finalizes MPI, so it lives as long as the communicator and is dropped
    // last (fields drop in declaration order).
    _universe: mpi::environment::Universe,
}

impl Mpi {
    /// Initializes MPI for this process. MPI can be initialized once per process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Comm("MPI was already initialized in this process".into()))?;
        let world = universe.world();
        let node = world.split_shared(world.rank());
        Ok(Mpi {
            local_rank: node.rank() as usize,
            local_size: node.size() as usize,
            world,
            _universe: universe,
        })
    }

    /// This rank's index among the ranks on its own node (`cuda:<local_rank>` is its GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of ranks on this rank's node.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Overwrites `bytes` on every rank with their value on rank `root` (NCCL's unique id).
    pub(super) fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) -> Result<()> {
        check_root("broadcast", root, self.size())?;
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(bytes);
        Ok(())
    }

    /// The sum over ranks of one count per rank (how many ranks failed a step, for instance).
    pub(super) fn sum_counts(&self, count: u64) -> u64 {
        let mut total = 0u64;
        self.world
            .all_reduce_into(&count, &mut total, SystemOperation::sum());
        total
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
        check_root("broadcast", root, self.size())?;
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
